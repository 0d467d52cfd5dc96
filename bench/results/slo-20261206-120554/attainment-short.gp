set terminal png size 1000,620 noenhanced
set output 'bench/results/slo-20261206-120554/attainment-short.png'
set title 'SLO attainment vs offered load, workload short, SLO ttft:1000,tpot:15'
set xlabel 'offered rate (req/s)'
set ylabel 'SLO attainment, both SLOs (%)'
set grid
set key bottom left
set yrange [0:105]
set arrow from 5.71,graph 0 to 5.71,graph 1 nohead dt 2 lc rgb 'gray'
plot 'bench/results/slo-20261206-120554/short-reject.dat' using 1:($3*100) with linespoints lw 2 title 'tandemd reject (default)', 'bench/results/slo-20261206-120554/short-disagg.dat' using 1:($3*100) with linespoints lw 2 title 'tandemd reject, disaggregated', 'bench/results/slo-20261206-120554/short-cluster.dat' using 1:($3*100) with linespoints lw 2 title 'tandemd reject, cluster (router + 2 workers)', 'bench/results/slo-20261206-120554/short-llama.dat' using 1:($3*100) with linespoints lw 2 title 'llama-server', 90 with lines dt 2 lw 2 lc rgb 'black' title '90% target'
