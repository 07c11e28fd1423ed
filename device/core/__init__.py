"""The vocabulary every other folder shares: settings (`config`), the error root (`errors`), the
event types (`events`), the audio frame (`frames`), owner-only files (`files`) and a run-time
setting followed across processes (`followed`).

May import: the standard library, third-party libraries and `device` itself (its constants).
Nothing here imports another folder of `device`.
"""
