"""REST job service (imported as ``nasvit.server``): FastAPI app, job store, worker, dashboard."""
