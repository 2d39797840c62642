"""The workbench's web app (``txwatch ui``): server-rendered pages, a JSON API, live alerts."""
