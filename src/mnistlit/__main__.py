from mnistlit.cli import main

main()
