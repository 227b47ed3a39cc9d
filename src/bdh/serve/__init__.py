"""`bdh serve`: an OpenAI-compatible HTTP server with persistent sessions and continuous batching.

`engine` (the decode thread: continuous batching), `sessions` (the session store: safetensors, atomic, LRU),
`app` (the FastAPI app: OpenAI shapes, SSE, errors), `cli` (`bdh serve`). FastAPI and uvicorn are imported only
by `app` and by the command itself (`pip install bdh[serve]`).
"""
