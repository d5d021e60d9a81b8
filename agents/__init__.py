"""The device agent (agents/agent.py) ships to devices as a single file; it is a package only so the host can find it."""
