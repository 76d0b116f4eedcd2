"""Runs one integration test module for CTest, as `python3 -m unittest -v
MODULE` would, and says in its exit status what the module checked:

  0   every test ran and passed (some may have skipped: listed at the end)
  1   a test failed or errored, or the module holds no test
  77  every test of the module skipped: CTest reports the module Skipped
      (tests/CMakeLists.txt sets SKIP_RETURN_CODE 77), never Passed

Usage: python3 runner.py MODULE (from tests/integration)."""

import os
import resource
import sys
import time
import unittest

SKIPPED_ALL = 77


class TimedResult(unittest.TextTestResult):
    """Records each test's wall time, printed at the end: where CI's time goes."""

    def startTest(self, test):
        self._t0 = time.monotonic()
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        self.times = getattr(self, "times", [])
        self.times.append((time.monotonic() - self._t0, test.id()))


def main(argv):
    if len(argv) != 2:
        sys.stderr.write("usage: runner.py MODULE\n")
        return 2
    sys.path.insert(0, os.getcwd())  # as `python3 -m unittest` does
    t0 = time.monotonic()
    suite = unittest.defaultTestLoader.loadTestsFromName(argv[1])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stderr, resultclass=TimedResult).run(suite)
    for seconds, name in sorted(getattr(result, "times", []), reverse=True):
        sys.stderr.write("time: %6.1fs %s\n" % (seconds, name))
    # CPU against wall time: a module far below 1 CPU mostly waits (ctest -j can overlap it).
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    sys.stderr.write("time: %.1fs wall, %.1fs CPU (this process and the processes it waited for)\n"
                     % (time.monotonic() - t0, cpu))
    if not result.wasSuccessful():
        return 1
    # A skip in setUpClass or setUpModule is one entry for tests never counted as run.
    # A skipped subtest (unittest.case._SubTest) skips a part of a test that ran: not counted.
    skipped_tests = sum(1 for test, _ in result.skipped
                        if isinstance(test, unittest.TestCase) and not isinstance(test, unittest.case._SubTest))
    checked = result.testsRun - skipped_tests
    for test, reason in result.skipped:
        sys.stderr.write("skipped: %s: %s\n" % (test.id(), reason))
    if checked > 0:
        return 0
    if not result.skipped:
        sys.stderr.write("%s: no tests ran\n" % argv[1])
        return 1
    sys.stderr.write("%s: every test skipped; reported as skipped, not passed\n" % argv[1])
    return SKIPPED_ALL


if __name__ == "__main__":
    sys.exit(main(sys.argv))
