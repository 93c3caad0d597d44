# Type stubs for the parts of cgroupspy (untyped, v1 only) that isolate/cgroups/v1_files.py uses.
