from barstream.cli import main

raise SystemExit(main())
