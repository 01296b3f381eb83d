from coretech.cli import main

raise SystemExit(main())
