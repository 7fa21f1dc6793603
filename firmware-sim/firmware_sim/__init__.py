"""Virtual device firmware: sampling loops that publish readings and record ground truth.

Installed as the `firmware_sim` package (the folder name has a dash, Python's can't).
"""
