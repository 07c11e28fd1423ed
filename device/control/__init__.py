"""What the owner can change, and the one code path every command takes (CLI, MQTT, voice, web):
`commands` (validation, signing, the `Controller`), `consent`, `mute`, `sensitivity` and
`save_mode` (run-time states that a command changes and the listener reads).

May import: `device.core`, `device.storage` and `device.wake` (the owner verifier a reject teaches).
"""
