"""The features stage's pure core: indicators over bar stores, batch and incremental alike.

* ``spec``: feature sets (config ``[[features]]``), the indicator catalogue and column layout;
* ``averages``, ``ranges``, ``flows``: the indicator kernels, one compiled loop each;
* ``engine``: ``compute`` (batch over a history), ``Stream`` (one bar at a time, provisional
  bars, rewinds) and ``state_at`` (the state at a bar from the stored values, no replay);
* ``layout``: the 64-byte feature record (docs/FORMAT.md "Feature stores").
"""
