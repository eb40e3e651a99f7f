from presence.service import main

main()
