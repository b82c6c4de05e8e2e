"""What the test folders share: fixtures for real parts (PostgreSQL, Chromium), the rule for a
real part that cannot start (:func:`nasvit_testing.availability.unavailable`), and helpers
(toy spaces, the tiny registered space, synthetic objectives, a running job service).

``tests/`` is on ``sys.path`` (pyproject's ``[tool.pytest.ini_options] pythonpath``), so test
modules import these as ``nasvit_testing.<module>``; test modules never import each other or a
conftest. The fixture modules are loaded as plugins by ``tests/conftest.py``.
"""
