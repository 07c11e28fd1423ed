"""What the device keeps on disk, each with one owner: clips and their encrypted files
(`clips`), the per-clip keys (`keystore`, `crypto`), the upload queue and remote deletes
(`upload_queue`), request records and nonces (`requests`), settings kept across restarts
(`preferences`), per-day counts (`stats`), installed models (`models`), and retention (`retention`).
They share one SQLite index through `db`; no SQL leaves this folder.

May import: `device.core`. Never audio, wake, speech, control, recording or integrations.
"""
