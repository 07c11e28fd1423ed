"""The listening loop: the recorder state machine (`recorder`, pure logic), the loop that drives
it with frames and acts on its decisions (`pipeline`: listener and clip writer), and the
hardware light and buttons (`indicator`).

May import: `device.core`, `device.storage`, `device.audio`, `device.wake`, `device.speech` and
`device.control`.
"""
