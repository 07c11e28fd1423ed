"""Audio in: the microphone and WAV sources behind one `AudioSource` protocol (`sources`),
voice activity (`vad`), and the noise suppressor that only the spoken commands' second hearing uses
(`denoise`). The PortAudio callback only copies frames onto a bounded queue.

May import: `device.core`.
"""
