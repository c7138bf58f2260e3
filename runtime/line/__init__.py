"""winclip.runtime.line: the line app around the engine core.

Frame sources (a table of kinds), the inspection driver, the live loop and its
status, event logs, plant sinks (a table, one module each), the live page and
the `winclip-inspect` command. It builds on the core (`Detector` and what it
uses); the core never imports anything from here.
"""
