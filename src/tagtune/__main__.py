from tagtune.cli import main

raise SystemExit(main())
