set terminal png size 1000,620 noenhanced
set output 'bench/results/slo-20261206-034528/goodput-short.png'
set title 'Goodput vs offered load, workload short, SLO ttft:1000,tpot:50'
set xlabel 'offered rate (req/s)'
set ylabel 'good req/s (both SLOs met)'
set grid
set key top left
set yrange [0:*]
set arrow from 5.401,graph 0 to 5.401,graph 1 nohead dt 2 lc rgb 'gray'
plot 'bench/results/slo-20261206-034528/short-fcfs.dat' using 1:2 with linespoints lw 2 title 'tandemd fcfs (before SLOs)', 'bench/results/slo-20261206-034528/short-off.dat' using 1:2 with linespoints lw 2 title 'tandemd admission off', 'bench/results/slo-20261206-034528/short-reject.dat' using 1:2 with linespoints lw 2 title 'tandemd reject (default)', 'bench/results/slo-20261206-034528/short-queue.dat' using 1:2 with linespoints lw 2 title 'tandemd queue', 'bench/results/slo-20261206-034528/short-llama.dat' using 1:2 with linespoints lw 2 title 'llama-server'
