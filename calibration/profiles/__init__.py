"""Line profiles made on the edge box: winclip-calibrate (setup.py: memory and thresholds, histogram.py, cli.py).

The profile format itself, and teaching it good parts later, are the core's (winclip.runtime.profiles).
"""
