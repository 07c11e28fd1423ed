"""Audio in: the microphone and WAV sources behind one `AudioSource` protocol (`sources`), and
voice activity (`vad`). The PortAudio callback only copies frames onto a bounded queue.

May import: `device.core`.
"""
