"""`bdh serve`: an OpenAI-compatible HTTP server with persistent sessions and continuous batching.

`engine` (the decode thread: continuous batching), `sessions` (the session store: safetensors, atomic, LRU),
`app` (the FastAPI app: error handlers, the key and body-size guard), `schema` (OpenAI shapes, errors, limits),
`server` (a request's run in an engine; the one completion path, JSON or SSE), `routes/` (models, completions,
chat, sessions), `cli` (`bdh serve`). FastAPI and uvicorn are imported only by `app` and the modules it uses, and
by the command itself (`pip install bdh[serve]`).
"""
