set terminal png size 1000,620 noenhanced
set output 'bench/results/slo-20261206-041419/goodput-long.png'
set title 'Goodput vs offered load, workload long, SLO ttft:5000,tpot:100'
set xlabel 'offered rate (req/s)'
set ylabel 'good req/s (both SLOs met)'
set grid
set key top left
set yrange [0:*]
set arrow from 0.513,graph 0 to 0.513,graph 1 nohead dt 2 lc rgb 'gray'
plot 'bench/results/slo-20261206-041419/long-fcfs.dat' using 1:2 with linespoints lw 2 title 'tandemd fcfs (before SLOs)', 'bench/results/slo-20261206-041419/long-off.dat' using 1:2 with linespoints lw 2 title 'tandemd admission off', 'bench/results/slo-20261206-041419/long-reject.dat' using 1:2 with linespoints lw 2 title 'tandemd reject (default)', 'bench/results/slo-20261206-041419/long-queue.dat' using 1:2 with linespoints lw 2 title 'tandemd queue', 'bench/results/slo-20261206-041419/long-llama.dat' using 1:2 with linespoints lw 2 title 'llama-server'
