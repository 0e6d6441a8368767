"""The web console on the gateway's listener (/ui/): models, activity, logs, host; docs/CONSOLE.md.

It sits above the gateway (it reads the gateway's Activity ring) and is mounted by the daemon's
wiring, so the gateway never imports it."""
