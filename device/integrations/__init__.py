"""The device's neighbours: the MQTT control plane (`mqtt`) and its Home Assistant discovery
(`ha`), consented uploads and remote deletes over HTTPS (`upload`), and systemd (`service`).

May import: every folder below it (core, storage, audio, wake, speech, control, recording).
Nothing imports it but the wiring (`device.app`, `device.cli`, `device.doctor`).
"""
