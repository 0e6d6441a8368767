"""One OpenAI-compatible endpoint for every model, served by llama-supervisord itself.

    client ──HTTP──> gateway (uvicorn + starlette, its own thread and asyncio loop)
                        │ routes by `model` (name or alias) from the loop's published routes
                        │ not running? EnsureRunning(model) on the loop's queue, await the future
                        │ Demand: in-flight / waiting counts the loop's scheduler reads
                        ▼
                     the model's llama-server (httpx.AsyncClient, streamed chunk by chunk)

The loop thread keeps owning all state: the gateway only reads published routes,
asks through the event queue, and counts its requests in `Demand`.
"""
