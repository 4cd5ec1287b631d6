"""``fastgen serve``: a live talking avatar in the browser over WebRTC, many sessions on one model.

- :mod:`.app`: the aiohttp routes, auth and limits (``create_app``); :mod:`.metrics`: ``/metrics``;
- :mod:`.session`: one viewer's session: its one sample clock, speech queue and playout;
- :mod:`.scheduler`: the one inference scheduler every session's generator work goes through;
- :mod:`.speech`: utterances and the audio they are decoded from;
- :mod:`.tracks`: the aiortc video and audio tracks;
- :mod:`.command`: the CLI subcommand; ``page/``: the static page.

Needs the ``serve`` extra (aiohttp, aiortc); ``import fastgen`` never imports it.
"""
