from barstream.fake.cli import main

raise SystemExit(main())
