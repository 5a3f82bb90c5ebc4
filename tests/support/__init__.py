"""Helpers shared by the test files, kept apart from them: pytest collects nothing here.

Test files import them as `from support import tolerances` (pytest puts tests/ on sys.path; the
test files that run themselves as scripts have it there as their own folder).
"""
