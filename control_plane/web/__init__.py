"""The web UI and its JSON API, served by every master (`tessera master --http`; docs/http-api.md).

A thin HTTP edge beside `control_plane/api/`: `params` (query parameters, pure), `views` (state, records and
spans as JSON, pure), `service` (the reads, through the objects the Operator servicer uses), `app` (the
aiohttp routes, authentication and error mapping), `server` (its thread and event loop in the master).
The pages themselves are the package's static files under `static/`.
"""
