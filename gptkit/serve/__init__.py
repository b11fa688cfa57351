"""`gptkit serve`: an OpenAI-compatible HTTP server over one model (engine.py decodes, app.py
routes, schema.py validates, static/chat.html is the chat page)."""
