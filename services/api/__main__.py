"""``python -m barstream.services.api --config FILE`` (what ``barstream serve`` runs)."""

from barstream.services.api.server import main

raise SystemExit(main())
