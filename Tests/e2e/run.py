#!/usr/bin/env python3
"""Run every natchat end-to-end test in Tests/e2e.

  python3 Tests/e2e/run.py [-q] [-f] [-k PATTERN ...]

Binaries come from $NATCHAT_BIN_DIR (default <repo>/.build/debug).  Tests that need a
missing binary are skipped, or fail when NATCHAT_E2E_STRICT=1.  Tests that need root
skip loudly when not root.

The last line is exactly "e2e: N passed, M failed, K skipped"; the exit status is
non-zero when anything failed (or errored, or nothing ran at all).
"""

import argparse
import os
import sys
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


class OutcomeResult(unittest.TextTestResult):
    """Tracks one outcome per test (subtests folded into their test)."""

    RANK = {"passed": 0, "skipped": 1, "failed": 2}

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.outcome = {}  # test id -> "passed" | "skipped" | "failed"
        self.skip_reasons = []

    def _set(self, test, what):
        test = getattr(test, "test_case", test)  # a _SubTest -> its test
        key = test.id()
        old = self.outcome.get(key)
        if old is None or self.RANK[what] > self.RANK[old]:
            self.outcome[key] = what

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "failed")

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "failed")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skipped")
        self.skip_reasons.append((getattr(test, "test_case", test).id(), reason))

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "passed")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "failed")

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:  # a passing subtest: the test's own addSuccess decides
            self._set(test, "failed")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("-q", "--quiet", action="store_true", help="dots instead of names")
    ap.add_argument("-f", "--failfast", action="store_true")
    ap.add_argument("-k", dest="patterns", action="append", default=None,
                    help="only tests matching this substring/glob (repeatable)")
    args = ap.parse_args()

    loader = unittest.TestLoader()
    if args.patterns:
        loader.testNamePatterns = [p if "*" in p else f"*{p}*" for p in args.patterns]
    suite = loader.discover(start_dir=HERE, pattern="test_*.py", top_level_dir=HERE)

    runner = unittest.TextTestRunner(verbosity=1 if args.quiet else 2,
                                     failfast=args.failfast, resultclass=OutcomeResult,
                                     stream=sys.stderr)
    t0 = time.monotonic()
    result = runner.run(suite)
    elapsed = time.monotonic() - t0

    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for what in result.outcome.values():
        counts[what] += 1

    if result.skip_reasons:
        sys.stderr.write("\nskipped:\n")
        for tid, reason in result.skip_reasons:
            sys.stderr.write(f"  SKIP {tid}: {reason}\n")
    sys.stderr.write(f"\ne2e: ran in {elapsed:.1f}s\n")
    sys.stderr.flush()
    print(f"e2e: {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped", flush=True)
    total = sum(counts.values())
    return 1 if counts["failed"] or total == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
