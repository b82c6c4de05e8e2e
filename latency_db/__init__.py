"""Latency database (imported as ``nasvit.latency_db``): profilers, block keys, SQL store."""
