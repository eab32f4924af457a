"""The fleet views: read-side queries (`queries.py`) and the page (index.html, app.js, style.css)."""
