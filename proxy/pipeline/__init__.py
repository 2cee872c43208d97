"""The call pipeline's shared vocabulary: the call as it moves through the core (``call.py``),
the hooks the core emits and the order addons run in (``hooks.py``), and the bus every trip
travels on (``bus.py``). The core (``proxy/server/forward.py``) and every addon
(``proxy/addons/``) import these; neither imports the other."""
