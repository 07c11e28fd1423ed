"""Hearing the wake word: detectors behind one `WakeDetector` protocol (`detector`), the energy
gate in front of them (`gate`), when a score counts as a wake (`trigger`: threshold, patience,
re-arming), the second looks before the light (`verifier` for the owner's voice, `phrase` for the
whole phrase), and the live meter (`meter`).

May import: `device.core`, `device.storage` (model files) and `device.audio`.
"""
