"""The room hub: wire contract, Mosquitto configuration, recorder, pull API, exports and reports."""
