from pykexec.cli import main

raise SystemExit(main())
