"""The device agent: times models on the device a table is for, and reports to a nasvit server.

It needs onnxruntime and numpy only (no torch): ``nasvit agent --server URL --token T``, or
``python -m nasvit.agent``, or the single file the server serves at ``/api/v1/agent.pyz``.
Its timing code (:mod:`nasvit.agent.timing`) is the one every table is measured with, also on
the search host. Keep this package free of imports from the rest of nasvit.
"""
