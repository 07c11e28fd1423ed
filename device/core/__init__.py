"""The vocabulary every other folder shares: settings (`config`), the error root (`errors`), the
event types (`events`), the audio frame (`frames`), owner-only files (`files`), a run-time
setting followed across processes (`followed`) and C libraries' stderr captured for a moment
(`stderr`).

May import: the standard library, third-party libraries and `device` itself (its constants).
Nothing here imports another folder of `device`.
"""
