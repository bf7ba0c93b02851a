"""The lab's tests: a package, so that a file name (test_bad_inputs.py) may repeat one in tests/."""
