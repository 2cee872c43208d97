"""The call pipeline's addons: each module one feature, hooked into the core at the events of
``proxy/pipeline/hooks.py``, listed once, in order, in ``proxy/app.py``."""
