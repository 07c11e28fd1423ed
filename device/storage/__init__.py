"""What the device keeps on disk, each piece with one owner that alone runs its SQL or touches its
files:
- `state`: a state directory opened once (its lock, key store and shared index), handing out the
  owners below; `ClipStore` (`clips`) opens one and is the door the rest of the device uses;
- `clips`: the clips (add, read, delete, wipe), with `clip_rows` (the `clips` table), `erasing`
  (keys then files, with a reserve for a full disk), `crypto` (the clip files' encryption) and
  `keystore` (the per-clip keys and the rotating key-encryption key);
- `upload_queue` (uploads, remote deletes), `requests` (request records, nonces), `preferences`
  (settings kept across restarts), `stats` (per-day counts): tables in the shared index (`db`),
  joined into one commit where a change spans them;
- `index`: the index's schema, upgrades, rebuild and crash sweep; `quarantine`: what was set aside
  as unreadable (listed, deleted, expired, wiped);
- `retention` (age and size limits) and `models` (installed models, apart from the clips).
No SQL leaves this folder.

May import: `device.core`. Never audio, wake, speech, control, recording or integrations.
"""
