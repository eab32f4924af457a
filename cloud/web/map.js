// voltgate fleet page: the map. Leaflet and Leaflet.markercluster are served by the receiver from
// their installed Python packages (the global `L`); tiles come from web.map_tile_url, or none: the
// markers and the selected bus's route then show on a blank map.

import { busTone } from "./fleet.js";
import { combinedRisk, num } from "./common.js";

const TONE_RANK = { crit: 5, warn: 4, low: 3, ok: 2, off: 1, unknown: 0 };

function markerIcon(tone, offline, selected) {
  const classes = ["bus-marker", `tone-${tone}`, offline ? "is-offline" : "", selected ? "is-selected" : ""];
  return L.divIcon({ className: classes.filter(Boolean).join(" "), iconSize: selected ? [20, 20] : [14, 14] });
}

// A cluster takes the most urgent tone of its buses, so a critical bus is never hidden in a green one.
function clusterIcon(cluster) {
  let tone = "unknown";
  for (const marker of cluster.getAllChildMarkers()) {
    if (TONE_RANK[marker.options.tone] > TONE_RANK[tone]) tone = marker.options.tone;
  }
  const count = cluster.getChildCount();
  const size = count < 10 ? 30 : count < 100 ? 36 : 42;
  const label = document.createElement("span");
  label.textContent = String(count);
  return L.divIcon({ html: label, className: `bus-cluster tone-${tone}`, iconSize: [size, size] });
}

export class FleetMap {
  constructor(element, config, onSelect) {
    this.onSelect = onSelect;
    this.map = L.map(element, { worldCopyJump: true, minZoom: 2, maxZoom: 19 }).setView([0, 20], 3);
    this.map.attributionControl.setPrefix("Leaflet");
    if (config.tile_url) {
      L.tileLayer(config.tile_url, { attribution: config.attribution || "", subdomains: config.subdomains, maxZoom: 19 }).addTo(this.map);
    } else {
      element.classList.add("blank-map");
      this.map.attributionControl.addAttribution("no map tiles configured (web.map_tile_url)");
    }
    this.cluster = L.markerClusterGroup({ iconCreateFunction: clusterIcon, showCoverageOnHover: false, maxClusterRadius: 45, chunkedLoading: true });
    this.map.addLayer(this.cluster);
    this.route = L.layerGroup().addTo(this.map);
    this.markers = new Map();
    this.selected = null;
    this.shownIds = null;
    this.fitted = false;
  }

  // One marker per bus with a position; the tooltip says what the colour stands for.
  setBuses(buses) {
    this.markers = new Map();
    this.shownIds = null; // new markers: the next show() places them
    for (const bus of buses) {
      if (!bus.location) continue;
      const tone = busTone(bus);
      const offline = bus.online === false;
      const marker = L.marker([bus.location.lat, bus.location.lon], { icon: markerIcon(tone, offline, bus.id === this.selected), tone, offline, keyboard: false });
      const soc = bus.soc_pct ? `${num(bus.soc_pct.value, 0)} %` : "–";
      const alerts = bus.active_alerts.length ? ` · ${bus.active_alerts.length} alert${bus.active_alerts.length > 1 ? "s" : ""}` : "";
      marker.bindTooltip(`${bus.id} · ${offline ? "offline" : bus.online ? "online" : "status unknown"} · SOC ${soc}${alerts} · risk ${combinedRisk(bus).level}`);
      marker.on("click", () => this.onSelect(bus.id));
      this.markers.set(bus.id, marker);
    }
  }

  // Shows the markers of these buses only (the list's search and filter), and frames them once.
  // The same buses in another order (a new sort) leave the clusters as they are.
  show(buses) {
    const ids = new Set(buses.map((bus) => bus.id));
    if (this.shownIds && ids.size === this.shownIds.size && [...ids].every((id) => this.shownIds.has(id))) return;
    this.shownIds = ids;
    const shown = buses.map((bus) => this.markers.get(bus.id)).filter(Boolean);
    this.cluster.clearLayers();
    this.cluster.addLayers(shown);
    if (!this.fitted && shown.length) {
      this.map.fitBounds(L.latLngBounds(shown.map((m) => m.getLatLng())), { padding: [30, 30], maxZoom: 14 });
      this.fitted = true;
    }
  }

  select(id) {
    for (const key of [this.selected, id]) {
      const marker = key ? this.markers.get(key) : null;
      if (marker) marker.setIcon(markerIcon(marker.options.tone, marker.options.offline, key === id));
    }
    this.selected = id;
    this.route.clearLayers();
    const marker = id ? this.markers.get(id) : null;
    if (marker && this.cluster.hasLayer(marker)) this.cluster.zoomToShowLayer(marker);
  }

  // The selected bus's track over the charts' window: [[lat, lon], ...] in time order.
  showRoute(points) {
    this.route.clearLayers();
    if (points.length < 2) return;
    L.polyline(points, { className: "bus-route", weight: 3 }).addTo(this.route);
  }

  resize() {
    this.map.invalidateSize();
  }
}
