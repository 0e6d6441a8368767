"""Manifests + lock + host facts -> DesiredModel: the llama-server argv (desired.py, allowed_flags.py)
and the reader child that runs it outside the daemon (reader.py).

Empty on purpose: the daemon imports supervisor.render.reader, which must not pull the renderer
(pydantic, PyYAML) into the long-lived process; import supervisor.render.desired for the renderer.
"""
