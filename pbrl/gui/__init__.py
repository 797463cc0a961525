"""The labeling web app: a FastAPI page server, clip rendering and the page itself.

``python -m pbrl.label serve --store STORE`` opens it. The label store it serves lives in
:mod:`pbrl.store` (teachers and the trainer use it without the web stack).
"""
