set terminal png size 900,600 noenhanced
set grid
set key bottom right
set output 'attainment_vs_rate.png'
set title 'SLO attainment vs request rate'
set xlabel 'request rate (req/s)'
set ylabel 'attainment'
set yrange [0:1.05]
set key bottom left
plot 'attainment.dat' using 1:2 with linespoints lw 2 title 'TTFT and TPOT', '' using 1:3 with linespoints title 'TTFT', '' using 1:4 with linespoints title 'TPOT', 0.900 with lines dt 2 lc rgb 'gray' title 'target'
set key bottom right
set autoscale y
set output 'ttft_cdf.png'
set title 'TTFT CDF'
set xlabel 'TTFT (ms)'
set ylabel 'fraction of requests'
unset arrow
set arrow from 1000.000, graph 0 to 1000.000, graph 1 nohead dt 2
plot 'ttft_0.dat' using 1:2 with lines lw 2 title '2.85 req/s', 'ttft_1.dat' using 1:2 with lines lw 2 title '5.71 req/s', 'ttft_2.dat' using 1:2 with lines lw 2 title '8.56 req/s', 'ttft_3.dat' using 1:2 with lines lw 2 title '11.4 req/s'
set output 'tpot_cdf.png'
set title 'TPOT CDF'
set xlabel 'TPOT (ms)'
set ylabel 'fraction of requests'
unset arrow
set arrow from 15.000, graph 0 to 15.000, graph 1 nohead dt 2
plot 'tpot_0.dat' using 1:2 with lines lw 2 title '2.85 req/s', 'tpot_1.dat' using 1:2 with lines lw 2 title '5.71 req/s', 'tpot_2.dat' using 1:2 with lines lw 2 title '8.56 req/s', 'tpot_3.dat' using 1:2 with lines lw 2 title '11.4 req/s'
