from pykexec.main import main

raise SystemExit(main())
