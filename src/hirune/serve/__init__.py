"""`hirune serve`: a local web page over trained runs (FastAPI, optional extra `hirune[serve]`).

    jobs.py     the job queue: one worker thread runs sampling and editing off the request thread
    runs.py     the runs under a root: what each can do, each loaded once, its samplers
    forms.py    the page's forms checked, bad values refused naming what is valid
    work.py     what a job does: samples, the trajectory GIF, the x0 estimates; an image's edit
    app.py      the FastAPI app: the page (static/index.html) and its JSON API
    server.py   bind the port (a port in use: a clear error), then uvicorn

FastAPI and uvicorn are imported inside the functions that need them, so this package
imports without them.
"""
