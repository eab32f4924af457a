"""Everything that crosses a wire or lives in a file format: the bus DBC, the signal catalog,
NMEA 0183, the uplink payload format and the MQTT topic scheme. Imports nothing of ours."""
