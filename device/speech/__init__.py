"""Speech after the wake word: transcription with Vosk (`asr`) and the spoken privacy commands
(`voice`).

May import: `device.core` and `device.storage` (model files).
"""
